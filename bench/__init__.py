"""Benchmarks of the drlora engine: speed (`bench.speed`) and quality (`bench.quality`).

Programs that print markdown tables and write JSON, run as `drlora bench speed|quality`. CI checks only ratios
measured within one run (see docs/benchmarks.md), never absolute times: the machines are shared and noisy.
"""
