"""MEGA API error codes, as the real service returns them (negative integers)."""

EINTERNAL = -1
EARGS = -2
EAGAIN = -3
ERATELIMIT = -4
EFAILED = -5
ETOOMANY = -6
ERANGE = -7
EEXPIRED = -8
ENOENT = -9
ECIRCULAR = -10
EACCESS = -11
EEXIST = -12
EINCOMPLETE = -13
EKEY = -14
ESID = -15
EBLOCKED = -16
EOVERQUOTA = -17
ETEMPUNAVAIL = -18
EGOINGOVERQUOTA = -24
EMFAREQUIRED = -26
EPAYWALL = -29


class ApiError(Exception):
    """Raised inside a command handler; becomes the command's integer result."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
