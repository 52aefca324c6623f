"""``python -m spatialoc_ros``: the same as the ``spatialoc`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
