"""The daemon: every part assembled from the flags (``assembly.py``, with the
pages in ``pages.py``) and the service twistd runs (``runner.py``)."""

from imaginator.daemon.assembly import (
    OBJECT_CACHE,
    Core,
    Daemon,
    ImageServerSettings,
    assemble_core,
    create_daemon,
    fresh_directory,
    start_services,
)
from imaginator.daemon.runner import DaemonRunner, check_process_environment

__all__ = [
    "OBJECT_CACHE",
    "Core",
    "Daemon",
    "DaemonRunner",
    "ImageServerSettings",
    "assemble_core",
    "check_process_environment",
    "create_daemon",
    "fresh_directory",
    "start_services",
]
