"""The ZMQ bus: topics, endpoints, batch encoding and the XSUB/XPUB proxy."""
