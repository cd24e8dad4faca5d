"""ktcluster: a Kyoto Tycoon client for one server or a consistent-hashing cluster."""
