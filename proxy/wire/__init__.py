"""Wire formats: msgspec Structs for the providers' JSON shapes. Imports nothing of ours."""
