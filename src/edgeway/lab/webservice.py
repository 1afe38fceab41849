"""The lab's internal web services behind the core (issue 9 item 9): a stand-in for the
HTTP services a remote client reaches through MRA (seed 002 §8.3), on plain HTTP at the
call-control address (127.0.0.4):

- UDS user lookup (Unified CM, port 8443): ``GET /cucm-uds/user/<userid>`` answers the user as
  XML when HTTP Basic credentials (RFC 7617) name that user with the lab password, else 401;
  ``GET /cucm-uds/version`` without credentials;
- configuration files over HTTP (TFTP, port 6970): ``GET /<name>.xml`` (e.g. ``jabber-config.xml``);
- voicemail REST (Unity Connection, port 8080): ``GET /vmrest/mailbox`` (Basic as UDS).

Plain HTTP keeps the lab small; the core reaches HTTPS services the same way (its client
trusts ``tls.ca_file``).
"""

from __future__ import annotations

import base64
import hmac

from aiohttp import web

__all__ = ["LabWebService", "LAB_USERS", "UDS_PORT", "TFTP_PORT", "VOICEMAIL_PORT"]

UDS_PORT = 8443
TFTP_PORT = 6970
VOICEMAIL_PORT = 8080
#: userid → password of the lab's directory. carol is the remote (MRA) user of the demo, with
#: the password the core's registrar knows her by (``topology.REMOTE_USERS``): one account
#: for her HTTPS requests and her SIP registration, as on a real call control.
LAB_USERS = {"alice": "alice-lab-pw", "bob": "bob-lab-pw", "carol": "carol-lab-secret"}


def _basic_user(request: web.Request) -> str | None:
    """The user whose Basic credentials are valid, else None."""
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
    except ValueError:
        return None
    expected = LAB_USERS.get(user)
    return user if expected is not None and hmac.compare_digest(password, expected) else None


def _unauthorized() -> web.Response:
    return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="edgeway-lab"'}, text="401 Unauthorized\n")


class LabWebService:
    """The three services on ``ip``; ``await start()`` / ``await close()``."""

    def __init__(self, ip: str, domain: str):
        self.ip = ip
        self.domain = domain
        self._runners: list[web.AppRunner] = []

    async def _user(self, request: web.Request) -> web.Response:
        userid = request.match_info["userid"]
        who = _basic_user(request)
        if who is None:
            return _unauthorized()
        if who != userid:
            return web.Response(status=403, text="403 Forbidden\n")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<user uri="/cucm-uds/user/{userid}"><userName>{userid}</userName>'
                f"<directoryUri>{userid}@{self.domain}</directoryUri><homeCluster>lab</homeCluster></user>\n")
        return web.Response(text=body, content_type="application/xml")

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(text='<versionInformation version="14.0"/>\n', content_type="application/xml")

    async def _config(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(text=f'<?xml version="1.0"?>\n<config file="{name}.xml"><Policies><EnableSIPURIDialling>true'
                                 "</EnableSIPURIDialling></Policies></config>\n", content_type="application/xml")

    async def _mailbox(self, request: web.Request) -> web.Response:
        who = _basic_user(request)
        if who is None:
            return _unauthorized()
        return web.json_response({"user": who, "messages": [{"from": f"bob@{self.domain}", "duration_s": 12}]})

    async def start(self) -> None:
        """Bind the three ports. Raises OSError when one is taken."""
        apps = {UDS_PORT: [web.get("/cucm-uds/user/{userid}", self._user), web.get("/cucm-uds/version", self._version)],
                TFTP_PORT: [web.get("/{name}.xml", self._config)],
                VOICEMAIL_PORT: [web.get("/vmrest/mailbox", self._mailbox)]}
        try:
            for port, routes in apps.items():
                app = web.Application()
                app.add_routes(routes)
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                self._runners.append(runner)
                await web.TCPSite(runner, self.ip, port, reuse_address=True).start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for r in self._runners:
            await r.cleanup()
        self._runners.clear()
