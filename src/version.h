/* version.h - the release, as /api/health reports it. */
#ifndef NUMATIX_VERSION_H
#define NUMATIX_VERSION_H
#define NUMATIX_VERSION "0.1.0"
#endif
