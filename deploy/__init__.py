"""Deployment files, installed as package data of ``mrifoundry.deploy``: the Prefect deployments
(prefect.yaml), Dask/SLURM cluster specs (dask/*.yaml), the pip constraints and the server,
worker and Orthanc scripts. ``mrifoundry where`` prints this folder of an installation."""
