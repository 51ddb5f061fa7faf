"""Supervision: the spawner, role dispatch (``data-feed role``), start-up checks, replay runs, config history."""
