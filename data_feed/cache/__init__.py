"""The cache: Redis streams (keys, groups, bounds, batch encoding), a writer's disk spill, a private redis-server."""
