"""Serving features to programs outside Python: an HTTP feature server on Ray Serve (:mod:`rayfs.serve.http`).

:mod:`rayfs.serve.protocol` holds the request and response rules (pure Python); :mod:`rayfs.serve.http`
the Ray Serve application that applies them to a named store.
"""
