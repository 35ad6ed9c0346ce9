"""System tests (marker ``system``): the whole service or whole processes: the wheel, the
command line, the container and manifests, the docs and notebook, the playground in a
browser, the benchmark harness."""
