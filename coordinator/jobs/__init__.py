"""The coordinator's job lifecycle: jobs are built (``backup``, ``maintenance``), sent
by one path (``dispatch``), and the agents' events about them are recorded (``record``).
"""

SCHEDULER = "scheduler"  # ``requested_by`` of every job a schedule starts
