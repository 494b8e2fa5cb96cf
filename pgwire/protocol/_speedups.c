/*
 * Optional accelerator for pgwire's hottest loop: decoding a run of DataRow
 * messages. Semantics are defined by the pure-Python fallback
 * `_decode_data_rows_py` in _messages.py; tests compare both on arbitrary input.
 *
 * decode_data_rows(buf, pos, end, limit, columns, max_rows, row_type)
 *     -> (list_of_rows, new_pos)
 *
 * Decodes consecutive complete 'D' frames in buf[pos:end]. It stops, without
 * raising, before the first frame that is not a DataRow, is incomplete, has a
 * length outside [4, limit + 4], is malformed inside, or whose column count
 * differs from `columns` (when columns >= 0); the caller's ordinary path then
 * handles that frame and reports any error precisely. Each row is created as
 * `row_type` with its `values` slot set to a tuple of bytes/None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *values_name;

static inline int32_t read_int32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                     ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

/* Decode one DataRow body; NULL with no exception set means "malformed". */
static PyObject *decode_body(const unsigned char *p, Py_ssize_t size, Py_ssize_t columns)
{
    if (size < 2)
        return NULL;
    Py_ssize_t count = ((Py_ssize_t)p[0] << 8) | p[1];
    if (columns >= 0 && count != columns)
        return NULL;
    Py_ssize_t pos = 2;
    PyObject *values = PyTuple_New(count);
    if (values == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (size - pos < 4)
            goto malformed;
        int32_t length = read_int32(p + pos);
        pos += 4;
        PyObject *value;
        if (length == -1) {
            value = Py_None;
            Py_INCREF(value);
        }
        else {
            if (length < 0 || (Py_ssize_t)length > size - pos)
                goto malformed;
            value = PyBytes_FromStringAndSize((const char *)p + pos, length);
            if (value == NULL) {
                Py_DECREF(values);
                return NULL;
            }
            pos += length;
        }
        PyTuple_SET_ITEM(values, i, value);
    }
    if (pos != size)
        goto malformed;
    return values;
malformed:
    Py_DECREF(values);
    return NULL;
}

static PyObject *decode_data_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "decode_data_rows takes 7 arguments");
        return NULL;
    }
    PyObject *buf = args[0];
    if (!PyBytes_Check(buf)) {
        PyErr_SetString(PyExc_TypeError, "buf must be bytes");
        return NULL;
    }
    if (!PyType_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "row_type must be a type");
        return NULL;
    }
    PyTypeObject *row_type = (PyTypeObject *)args[6];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[3]);
    Py_ssize_t columns = PyLong_AsSsize_t(args[4]);
    Py_ssize_t max_rows = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t buf_size = PyBytes_GET_SIZE(buf);
    if (end > buf_size)
        end = buf_size;
    if (pos < 0)
        pos = 0;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);

    PyObject *rows = PyList_New(0);
    if (rows == NULL)
        return NULL;
    Py_ssize_t decoded = 0;
    while (decoded < max_rows && end - pos >= 5 && data[pos] == 'D') {
        int32_t length = read_int32(data + pos + 1);
        if (length < 4 || (Py_ssize_t)length - 4 > limit || (Py_ssize_t)length + 1 > end - pos)
            break;
        PyObject *values = decode_body(data + pos + 5, (Py_ssize_t)length - 4, columns);
        if (values == NULL) {
            if (PyErr_Occurred())
                goto error;
            break;
        }
        PyObject *row = row_type->tp_alloc(row_type, 0);
        if (row == NULL) {
            Py_DECREF(values);
            goto error;
        }
        /* Generic setattr reaches the slot descriptor and bypasses the frozen
           dataclass's __setattr__, exactly as object.__setattr__ does. */
        int failed = PyObject_GenericSetAttr(row, values_name, values);
        Py_DECREF(values);
        if (failed || PyList_Append(rows, row) < 0) {
            Py_DECREF(row);
            goto error;
        }
        Py_DECREF(row);
        pos += (Py_ssize_t)length + 1;
        decoded++;
    }
    PyObject *new_pos = PyLong_FromSsize_t(pos);
    if (new_pos == NULL)
        goto error;
    PyObject *result = PyTuple_Pack(2, rows, new_pos);
    Py_DECREF(rows);
    Py_DECREF(new_pos);
    return result;
error:
    Py_DECREF(rows);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_data_rows", (PyCFunction)(void (*)(void))decode_data_rows, METH_FASTCALL,
     "Decode a run of complete DataRow frames; see the module source for the contract."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pgwire.protocol._speedups",
    "Optional C accelerator for decoding DataRow runs.", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    values_name = PyUnicode_InternFromString("values");
    if (values_name == NULL)
        return NULL;
    return PyModule_Create(&module);
}
