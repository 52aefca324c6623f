"""pip install of the `spatialoc_ros` Python package (the virtualenv route).

`make install` runs `pip install --no-deps -e .`; a ROS 2 workspace builds the
package with CMakeLists.txt instead. Dependencies are deliberately not listed
here: requirements.txt pins them all, and an unpinned `torch` would let pip
pull a different (multi-GB CUDA) build.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def package_xml_version() -> str:
    """The version from package.xml, the one place it is written."""
    text = (HERE / "package.xml").read_text(encoding="utf-8")
    return re.search(r"<version>\s*([^<\s]+)\s*</version>", text).group(1)


setup(
    name="spatialoc_ros",
    version=package_xml_version(),
    description="Text-to-point-cloud localization (SpatiaLoc) as a ROS 2 package",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["spatialoc_ros", "spatialoc_ros.*"]),
    # Spelling out the root as the package folder makes setuptools' editable
    # install a plain .pth entry for this folder, not an import hook. That
    # matters because the generated messages live in a second folder named
    # spatialoc_ros (in site-packages): a .pth entry lets the normal path search
    # find our __init__.py, which then adds that folder to the package's
    # __path__. An import hook would only be asked after the path search had
    # already settled for the site-packages folder alone.
    package_dir={"": "."},
    entry_points={
        "console_scripts": [
            "spatialoc = spatialoc_ros.cli:main",
            "spatialoc-localizer = spatialoc_ros.ros.main:main",
            "spatialoc-speech = spatialoc_ros.ros.speech_node:main",
        ],
    },
    zip_safe=False,
)
