"""Long-lived named guests: configs in the store, lifecycle, supervision, reconciliation.

Public entry points live in :mod:`berth.guests.lifecycle`; the supervisor daemon in
:mod:`berth.guests.daemon` and the work it forks in :mod:`berth.guests.worker`.
"""
