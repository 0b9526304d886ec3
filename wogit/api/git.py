"""``/_git``: the registry repository over git's smart HTTP: clone, fetch and push.

``git clone http://HOST:PORT/_git`` clones the whole registry.  Reading needs
``read`` on every repository (a clone holds them all); pushing needs ``admin``
and goes through the registry's ``pre-receive`` hook like any push.  Only git's
three smart endpoints are routes, each with its one method (so a wrong method is a
405 whose ``Allow`` is right, and any other path under ``/_git`` is a 404).  Git
clients get git's own protocol answers; every error is JSON like any other.
"""

import bottle

from wogit import githttp
from wogit.access import Level
from wogit.api.body import Body
from wogit.api.gate import EVERYWHERE, USER


def _need(request) -> Level:
    asked = githttp.service("info/refs", request.environ.get("QUERY_STRING", ""))
    return Level.ADMIN if asked == githttp.RECEIVE_PACK else Level.READ


def install(app, store, settings) -> None:
    def serve(path: str):
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

    @app.get("/_git/info/refs", need=_need, scope=EVERYWHERE)
    def git_info_refs():
        return serve("info/refs")

    @app.post("/_git/git-upload-pack", need=Level.READ, scope=EVERYWHERE)
    def git_upload_pack():
        return serve(githttp.UPLOAD_PACK)

    @app.post("/_git/git-receive-pack", need=Level.ADMIN, scope=EVERYWHERE)
    def git_receive_pack():
        return serve(githttp.RECEIVE_PACK)
