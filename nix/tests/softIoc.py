"""softIoc [SCRIPT...]: a soft IOC, as EPICS base's `softIoc` is.

Loads base.dbd, runs each iocsh script given (a `st.cmd` whose first line is
`#!../../bin/linux-x86_64/softIoc` lands here), then an interactive iocsh on
stdin, which procServ turns into the IOC console. EPICS base comes from
PyPI's epicscorelibs, driven with ctypes: nixpkgs has no EPICS base.
"""
import ctypes
import os
import sys

from epicscorelibs import path

Com = ctypes.CDLL(path.get_lib("Com"), mode=ctypes.RTLD_GLOBAL)
dbCore = ctypes.CDLL(path.get_lib("dbCore"), mode=ctypes.RTLD_GLOBAL)
ctypes.CDLL(path.get_lib("dbRecStd"), mode=ctypes.RTLD_GLOBAL)

Com.iocsh.argtypes = [ctypes.c_char_p]
Com.epicsExit.argtypes = [ctypes.c_int]
dbCore.dbLoadDatabase.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
dbCore.registerAllRecordDeviceDrivers.argtypes = [ctypes.c_void_p]

dbCore.iocshRegisterCommon()
dbd_dir = os.path.join(path.base_path, "dbd").encode()
if dbCore.dbLoadDatabase(b"base.dbd", dbd_dir, None):
    sys.exit("softIoc: cannot load base.dbd")
if dbCore.registerAllRecordDeviceDrivers(ctypes.c_void_p.in_dll(dbCore, "pdbbase")):
    sys.exit("softIoc: cannot register the record and device support")

for script in sys.argv[1:]:
    if Com.iocsh(script.encode()):
        print(f"softIoc: error in {script}", file=sys.stderr)
        Com.epicsExit(1)
Com.iocsh(None)
Com.epicsExit(0)
