#ifndef STRATA_MFT_H
#define STRATA_MFT_H
#include <Python.h>

/* mft_scan(buf, record_size, want_attributes) -> (codes, live, attrs, si, fn, sizes, ads,
 * reparse): see strata_mft.c. */
PyObject *strata_mft_scan(PyObject *self, PyObject *args);

#endif
