"""The ``prunesearch`` command line; the library is ``search``, the service ``service``."""
