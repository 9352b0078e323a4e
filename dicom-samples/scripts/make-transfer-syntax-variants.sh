#!/usr/bin/env bash
# Makes transfer-syntax variants of the generator's DICOM files with independent tools:
# dcmtk (dcmconv, dcmcrle, dcmcjpeg, dcmcjpls) and GDCM (gdcmconv).
#
#   make-transfer-syntax-variants.sh IN_DIR OUT_DIR
#
# For every *.dcm under IN_DIR it writes OUT_DIR/<variant>/<same relative path>, where
# <variant> is one of:
#   implicit-le      1.2.840.10008.1.2          dcmconv +ti
#   explicit-le      1.2.840.10008.1.2.1        dcmconv +te
#   explicit-be      1.2.840.10008.1.2.2        dcmconv +tb (retired, still met in archives)
#   deflate          1.2.840.10008.1.2.1.99     dcmconv +td
#   rle              1.2.840.10008.1.2.5        dcmcrle
#   jpeg-lossless    1.2.840.10008.1.2.4.70     dcmcjpeg +e1 (process 14, selection value 1)
#   jpeg-baseline    1.2.840.10008.1.2.4.50     dcmcjpeg +eb +Wi 1 (lossy, 8 bits: dcmcjpeg renders
#                                               the image through its first VOI window and marks
#                                               it DISP — as such files come from the field)
#   jpeg-extended    1.2.840.10008.1.2.4.51     dcmcjpeg +ee (lossy, 12 bits)
# Both lossy JPEG variants are made for images of at most 12 bits (the radiographs).
#   jpeg-ls          1.2.840.10008.1.2.4.80     dcmcjpls (lossless)
#   j2k-lossless     1.2.840.10008.1.2.4.90     gdcmconv --j2k
#   j2k-lossy        1.2.840.10008.1.2.4.91     gdcmconv --j2k --lossy -q 30
# A file a tool cannot encode (e.g. 16-bit data for 12-bit JPEG) is reported and skipped.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 IN_DIR OUT_DIR" >&2
    exit 2
fi
in_dir=$1
out_dir=$2
for tool in dcmconv dcmcrle dcmcjpeg dcmcjpls dcmdump gdcmconv; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found (install dcmtk and libgdcm-tools)" >&2; exit 1; }
done

bits_stored() { dcmdump -q +P BitsStored "$1" | sed -E 's/.*US ([0-9]+).*/\1/' | head -n1; }

skipped=0
made=0
while IFS= read -r -d '' file; do
    rel=${file#"$in_dir"/}
    bits=$(bits_stored "$file")
    run_variant() { # name command...
        local name=$1; shift
        local target="$out_dir/$name/$rel"
        mkdir -p "$(dirname "$target")"
        if "$@" "$file" "$target" >/dev/null 2>"$target.log"; then
            rm -f "$target.log"
            made=$((made + 1))
        else
            echo "skipped $name for $rel: $(tr '\n' ' ' <"$target.log")" >&2
            rm -f "$target" "$target.log"
            skipped=$((skipped + 1))
        fi
    }
    run_variant implicit-le dcmconv +ti
    run_variant explicit-le dcmconv +te
    run_variant explicit-be dcmconv +tb
    run_variant deflate dcmconv +td
    run_variant rle dcmcrle
    run_variant jpeg-lossless dcmcjpeg +e1
    # Lossy JPEG holds at most 12 bits: only the radiographs (12-bit) get these variants;
    # a 16-bit CT would come out as an 8-bit "CT" that no CT IOD allows.
    if [ "$bits" -le 12 ]; then
        run_variant jpeg-baseline dcmcjpeg +eb +Wi 1
        run_variant jpeg-extended dcmcjpeg +ee
    fi
    run_variant jpeg-ls dcmcjpls
    run_variant j2k-lossless gdcmconv --j2k
    run_variant j2k-lossy gdcmconv --j2k --lossy -q 30
done < <(find "$in_dir" -name '*.dcm' -print0 | sort -z)

echo "made $made variant files in $out_dir ($skipped skipped)"
