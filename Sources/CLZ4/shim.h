#ifndef TERN_CLZ4_SHIM_H
#define TERN_CLZ4_SHIM_H
#include <lz4.h>
#endif
