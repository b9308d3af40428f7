"""What a request asks for: the internal request type, its options and their checks."""
