"""Command-line registrations of ``spatialoc`` subcommands that live outside cli.py."""
