"""edgeinfer: a Python client for edgeinferd's binary protocol (docs/protocol.md).

    from edgeinfer import Client
    c = Client(unix="/run/edgeinfer/edgeinferd.sock")
    out = c.predict("churn", {"float_input": x})   # {name: numpy array}
    r = c.predict_by_entity("churn", ["c-1", "c-2"])  # features from the server's store
"""

from ._codec import EntityPrediction
from .aio import AsyncClient
from .client import Client, ClientPool, Stats
from .errors import (ERRORS, BadFrame, BadInput, ConnectionClosed, DeadlineExceeded,
                     EdgeInferError, FeatureStore, FrameTooLarge, InputError, Internal,
                     NotImplementedByServer, NotReady, Overloaded, ProtocolError, ServerError,
                     ShuttingDown, Timeout, TooManyInFlight, Unauthenticated, Unavailable,
                     UnknownModel, UnknownOpcode, UnknownRequestId, UnsupportedVersion,
                     server_error)
from .shm import ShmClient

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "Client", "ClientPool", "EntityPrediction", "ShmClient", "Stats", "ERRORS",
    "BadFrame", "BadInput",
    "ConnectionClosed", "DeadlineExceeded", "EdgeInferError", "FeatureStore", "FrameTooLarge",
    "InputError",
    "Internal", "NotImplementedByServer", "NotReady", "Overloaded", "ProtocolError",
    "ServerError", "ShuttingDown", "Timeout", "TooManyInFlight", "Unauthenticated",
    "Unavailable", "UnknownModel", "UnknownOpcode", "UnknownRequestId", "UnsupportedVersion", "server_error",
]
