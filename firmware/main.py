# Runs after boot.py: the reader application. Ctrl-C on the serial port stops it at the REPL.
import gv.app

gv.app.main()
