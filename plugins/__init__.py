"""
twistd service makers: one module per command (C{twistd account},
C{twistd post}, C{twistd notify}, C{twistd gateway} and the all-in-one
C{twistd txplatform}), each an C{Options} class and C{makeService}.  The
dropin C{twisted/plugins/txplatform_dropin.py} names them; a module is only
imported when its command runs.
"""
