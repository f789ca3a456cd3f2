"""caget PV: prints the value of PV, read over Channel Access, as a string.

EPICS base's own `caget`, in a few lines of ctypes over epicscorelibs'
libca: nixpkgs has no EPICS base.
"""
import ctypes
import sys

from epicscorelibs import path

ECA_NORMAL = 1
DBR_STRING = 0
MAX_STRING_SIZE = 40

ca = ctypes.CDLL(path.get_lib("ca"))
ca.ca_context_create.argtypes = [ctypes.c_int]
ca.ca_create_channel.argtypes = [
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.POINTER(ctypes.c_void_p),
]
ca.ca_pend_io.argtypes = [ctypes.c_double]
ca.ca_array_get.argtypes = [ctypes.c_long, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p]
ca.ca_message.argtypes = [ctypes.c_long]
ca.ca_message.restype = ctypes.c_char_p


def check(status, what):
    if status != ECA_NORMAL:
        sys.exit(f"caget: {what}: {ca.ca_message(status).decode()}")


pv = sys.argv[1]
check(ca.ca_context_create(0), "creating the CA context")
channel = ctypes.c_void_p()
check(ca.ca_create_channel(pv.encode(), None, None, 0, ctypes.byref(channel)), f"creating {pv}")
check(ca.ca_pend_io(5.0), f"connecting to {pv}")
value = ctypes.create_string_buffer(MAX_STRING_SIZE)
check(ca.ca_array_get(DBR_STRING, 1, channel, value), f"reading {pv}")
check(ca.ca_pend_io(5.0), f"reading {pv}")
print(value.value.decode())
