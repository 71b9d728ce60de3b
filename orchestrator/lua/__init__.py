"""Lua scripts of the Redis queue (see `orchestrator.lua.scripts`)."""
