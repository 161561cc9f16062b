from tapio._fast.redact cimport redact_config


cdef class Redactor:
    cdef redact_config cfg
    cdef readonly tuple words
