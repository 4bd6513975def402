"""Processes that host real services for the benchmarks: hfl.bench starts them by module name and
never imports them."""
