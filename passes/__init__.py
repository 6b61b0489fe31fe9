"""The compiler passes, one module per pass; compiler/driver.py declares their order."""
