#!/usr/bin/env node
// npm run build: compiles the LD_PRELOAD interposer into dist/interposer/.
import { buildPreloadLibrary, PRELOAD_NAME } from '../dist/service/preload-library.js';
buildPreloadLibrary(new URL(`../dist/interposer/${PRELOAD_NAME}`, import.meta.url).pathname);
