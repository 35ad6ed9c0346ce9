"""System tests: they build and install things (marker ``system``)."""
