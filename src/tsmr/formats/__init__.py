"""Pure codecs, one module per format: bytes in, objects out; no I/O, no clock, no globals.

Every ``parse`` is total: for any input it returns a value or raises
:class:`tsmr.errors.ParseError` naming the format, the offset and the field.
"""
