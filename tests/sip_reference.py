"""The SIP parser before the fast paths (uri.py + message.py of the reference revision),
loaded from git history by :mod:`reference_source`."""

from reference_source import load

globals().update({k: v for k, v in vars(load("_sip_reference", "src/edgeway/sip/uri.py",
                                                  "src/edgeway/sip/message.py")).items() if not k.startswith("__")})
