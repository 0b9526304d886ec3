"""Who may do what: the one place every request is authenticated and authorised.

Routes declare the level they need (``need=Level.WRITE``, or a function of the
request when one path serves several purposes) and whether it is needed on the
path's ``<repository>``, on at least one repository (``scope=ANY``) or on every
repository (``scope=EVERYWHERE``); this Bottle plugin checks it before the route
runs.  A read-only replica refuses every write here, before anything else.
Credentials are HTTP Basic, checked against the htpasswd ``Users``; the
``Policy`` says what each user (or anonymous client) may do where.
"""

from __future__ import annotations

import bottle

from wogit import errors
from wogit.access import Level, Policy
from wogit.auth import Throttle, Users, parse_basic

REPOSITORY = "repository"  # the level is needed on the route's <repository>
ANY = "any"  # the level is needed on at least one repository (uploads)
EVERYWHERE = "everywhere"  # the level is needed on every repository (git clone, fetch, push)
CHALLENGE = {"WWW-Authenticate": 'Basic realm="wogit", charset="UTF-8"'}
USER = "wogit.user"  # the authenticated user's name in the WSGI environ (for the access log)


class Gate:
    name = "wogit-gate"
    api = 2

    def __init__(self, policy: Policy, users: Users | None = None, throttle: Throttle | None = None,
                 replica_of: str | None = None):
        if policy.requires_auth and users is None:
            raise ValueError("a policy that requires authentication needs users")
        self.policy = policy
        self.users = users
        self.throttle = Throttle() if throttle is None else throttle
        self.replica_of = replica_of  # the primary's URL: this registry takes no writes

    @classmethod
    def open(cls) -> Gate:
        return cls(Policy.open())

    def apply(self, callback, route):
        need = route.config.get("need")
        if need is None:
            return callback
        scope = route.config.get("scope", REPOSITORY)

        def checked(*args, **kwargs):
            level = need(bottle.request) if callable(need) else need
            if self.replica_of and level >= Level.WRITE:
                raise errors.READ_ONLY(f"this registry is a read-only replica of {self.replica_of}; "
                                       "send writes to the primary")
            user = self.authenticate(bottle.request.environ)
            repository = kwargs.get("repository") if scope == REPOSITORY else None
            if scope == EVERYWHERE:
                allowed, where = self.policy.level_everywhere(user), "every repository"
            else:
                allowed = self.policy.level(user, repository)
                where = f"repository {repository!r}" if repository else "any repository"
            if allowed < level:
                if user is None:
                    raise errors.UNAUTHORIZED("this needs credentials (HTTP Basic)", CHALLENGE)
                raise errors.FORBIDDEN(f"user {user!r} may not {level.word} on {where}")
            return callback(*args, **kwargs)

        return checked

    def authenticate(self, environ: dict) -> str | None:
        """The user named by valid credentials, None for an anonymous client; 401 or 429 otherwise."""
        if not self.policy.requires_auth:
            return None
        try:
            credentials = parse_basic(environ.get("HTTP_AUTHORIZATION"))
        except ValueError as exc:
            raise errors.UNAUTHORIZED(f"malformed Authorization header: {exc}", CHALLENGE) from None
        if credentials is None:
            return None
        name, password = credentials
        address = environ.get("REMOTE_ADDR", "")
        wait = self.throttle.retry_after(address)
        if wait is not None and not self.users.cached(name, password):
            raise errors.TOO_MANY_ATTEMPTS(f"too many failed logins from {address}; retry in {wait} s",
                                           {"Retry-After": str(wait)})
        if not self.users.check(name, password):
            self.throttle.failure(address)
            raise errors.UNAUTHORIZED("invalid user name or password", CHALLENGE)
        environ[USER] = name
        return name

    def describe(self) -> dict:
        return self.policy.describe()
