"""Bench cases: each module defines ``CASES: list[Case]`` (see ``bench/harness.py``)."""
