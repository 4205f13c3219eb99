"""Packages: the design's top-level folders (flows/, tasks/, models/, catalog/) are installed and
imported as ``mrifoundry.flows``, ``mrifoundry.tasks`` … (one import root: no top-level ``tasks``
in site-packages to collide with another distribution's); deploy/ is package data of
``mrifoundry.deploy`` (cluster specs, deployments, scripts). Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

ROOTS = ("flows", "tasks", "models", "catalog", "deploy")
packages = find_packages(include=["mrifoundry", "mrifoundry.*"])
package_dir = {"mrifoundry": "mrifoundry"}
for root in ROOTS:
    package_dir[f"mrifoundry.{root}"] = root
    packages += [f"mrifoundry.{root}"] + [f"mrifoundry.{root}.{p}" for p in find_packages(root)]

setup(packages=packages, package_dir=package_dir)
