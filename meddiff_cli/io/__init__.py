"""Volume I/O: everything that enters or leaves meddiff as a :class:`Volume` with RAS+ geometry."""

from meddiff_cli.io.nifti import read_nifti, write_nifti
from meddiff_cli.io.volume import LPS_TO_RAS, Volume

__all__ = ["Volume", "LPS_TO_RAS", "read_nifti", "write_nifti"]
