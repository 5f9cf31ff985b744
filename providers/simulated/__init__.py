"""The simulated target: an in-process, file-backed or HTTP cloud for tests and demos."""
