"""A member's layers on other machines through llama.cpp's RPC backend."""
