"""Teacher annotation: instruction data in, a Pasta-Lang training set out."""
