"""The taskevents command line, the demo stream and the local runner: tools for people and
tests, never installed in a service image."""
