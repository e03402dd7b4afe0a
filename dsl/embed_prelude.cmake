# Writes dsl/prelude.pat into a C++ source as a raw string (run by CMake at build time).
file(READ ${IN} text)
file(WRITE ${OUT} "// Generated from dsl/prelude.pat by embed_prelude.cmake; do not edit.\n"
  "namespace sparsa::dsl { extern const char* const kPreludeText; const char* const kPreludeText = R\"sparsa_prelude(${text})sparsa_prelude\"; }\n")
