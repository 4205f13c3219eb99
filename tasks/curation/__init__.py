"""The curation DAG: the run (runner), its stages (selection, archive, deid, continuity, convert,
catalog) and the PHI audit (audit).

pydicom's validation messages quote header values ("Invalid value for VR PN: 'DOE^JOHN…'"), which
may be PHI, and a worker's console ends up in log files: below ERROR they are not emitted by any
process that curates. Decisions about such values are the stages' own (reason codes, no values).
"""
import logging as _logging

_logging.getLogger("pydicom").setLevel(_logging.ERROR)
