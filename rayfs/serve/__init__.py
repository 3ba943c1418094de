"""Serving features to programs outside Python: an HTTP feature server on Ray Serve.

:mod:`rayfs.serve.protocol` holds the request and response rules and bearer tokens (pure Python);
:mod:`rayfs.serve.http` the Ray Serve application that applies them to a named store. This package is
internal and may change: ``rayfs serve --http`` and the README's "Serving over HTTP" are the interface.
"""

__all__: list[str] = []
