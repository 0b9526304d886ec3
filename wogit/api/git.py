"""``/_git``: the registry repository over git's smart HTTP: clone, fetch and push.

``git clone http://HOST:PORT/_git`` clones the whole registry.  Reading needs
``read`` on every repository (a clone holds them all); pushing needs ``admin``
and goes through the registry's ``pre-receive`` hook like any push.  Git clients
get git's own protocol answers; what git does not speak (no permission, an
endpoint that is not git's) and git's own refusals (a wrong method or Content-Type)
are answered with JSON.
"""

import bottle

from wogit import githttp
from wogit.access import Level
from wogit.api.body import Body
from wogit.api.gate import EVERYWHERE, USER


def _need(request) -> Level:
    asked = githttp.service(request.environ.get("PATH_INFO", "").removeprefix("/_git/"),
                            request.environ.get("QUERY_STRING", ""))
    return Level.ADMIN if asked == githttp.RECEIVE_PACK else Level.READ


def install(app, store, settings) -> None:
    @app.route("/_git/<path:path>", method=["GET", "POST"], need=_need, scope=EVERYWHERE)
    def git(path):
        environ = bottle.request.environ
        request = githttp.Request(
            method=environ["REQUEST_METHOD"], path=path, query=environ.get("QUERY_STRING", ""),
            content_type=environ.get("CONTENT_TYPE"), content_length=environ.get("CONTENT_LENGTH"),
            content_encoding=environ.get("HTTP_CONTENT_ENCODING"), git_protocol=environ.get("HTTP_GIT_PROTOCOL"),
            user=environ.get(USER), address=environ.get("REMOTE_ADDR"))
        body = None
        if request.method == "POST":
            body = Body(environ, settings.max_map_size, "git request", empty_ok=True)
        answer = store.serve_git(request, body)
        return bottle.HTTPResponse(answer.body, answer.status, dict(answer.headers))
