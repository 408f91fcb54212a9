"""Monitoring: what guests consume, sampled from their cgroup files (never from ps).

:mod:`berth.monitor.sample` reads and derives (CPU % between two samples, uptime, addresses);
``berth stats`` and ``berth top`` print what it returns.  Nothing here writes to a guest.
"""
