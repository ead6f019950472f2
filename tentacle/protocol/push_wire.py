"""The push protocol's names: the server sends a package's bytes to a listening tentacle.

    HEAD {PACKAGES_PATH}   200: the tentacle has the file; 404 with PARTIAL_LENGTH: it holds
                           that many bytes of it (0: none)
    PUT  {PACKAGES_PATH}   OFFSET: where the body starts in the file; ENCODING: identity
                           or zstd (the body is ours to decode, so not Content-Encoding)

The sender is server_shim.dispatch.pusher, the receiver tentacle.packages.receive; both
take these names from here.
"""

PACKAGES_PATH = "/packages/v1/{taskId}/{sha512}"
OFFSET = "Tentacle-Offset"
ENCODING = "Tentacle-Encoding"
PARTIAL_LENGTH = "Tentacle-Partial-Length"
