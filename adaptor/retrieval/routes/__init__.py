"""The HTTP service's routes, one router per concern; :mod:`adaptor.retrieval.service` wires them.

:mod:`.state` is what they read from the app; :mod:`.models` the shapes they declare;
:mod:`.auth` the optional API key; :mod:`.image_upload` how an uploaded image is read;
:mod:`.status`, :mod:`.search`, :mod:`.classify` and :mod:`.records` the endpoints.
"""
