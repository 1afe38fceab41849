"""The SDP parser before the fast paths (sdp.py of the reference revision), loaded from
git history by :mod:`reference_source`."""

from reference_source import load

globals().update({k: v for k, v in vars(load("_sdp_reference", "src/edgeway/sip/sdp.py")).items()
                  if not k.startswith("__")})
