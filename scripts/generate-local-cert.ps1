<#
.SYNOPSIS
  Creates a self-signed certificate for local HTTPS: certs\localhost.crt and
  certs\localhost.key (PEM), valid for a year, for localhost, 127.0.0.1 and ::1.

.DESCRIPTION
  Windows counterpart of scripts/generate-local-cert.sh; needs no OpenSSL. The certificate is
  made with .NET's CertificateRequest (in memory: nothing is added to a certificate store),
  with an ECDSA P-256 key, CA:FALSE, serverAuth, and the three names as SANs. The key file's
  ACL is reduced to the current user. Existing files are kept unless you confirm or pass
  -Force. Works in Windows PowerShell 5.1 (.NET Framework 4.7.2+) and PowerShell 7.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File scripts\generate-local-cert.ps1
  powershell -ExecutionPolicy Bypass -File scripts\generate-local-cert.ps1 -Force -OutDir C:\certs
#>
[CmdletBinding()]
param(
  [switch]$Force,
  [string]$OutDir = (Join-Path (Split-Path -Parent $PSScriptRoot) 'certs'),
  [int]$Days = 365
)
$ErrorActionPreference = 'Stop'

$crt = Join-Path $OutDir 'localhost.crt'
$key = Join-Path $OutDir 'localhost.key'
if ((Test-Path $crt) -or (Test-Path $key)) {
  if (-not $Force) {
    if ([Environment]::UserInteractive -and -not [Console]::IsInputRedirected) {
      $answer = Read-Host "$crt or $key exists. Overwrite? [y/N]"
      if ($answer -notmatch '^(y|yes)$') { Write-Host 'kept the existing files'; exit 0 }
    } else {
      Write-Error "$crt or $key exists; pass -Force to overwrite"
      exit 1
    }
  }
}
New-Item -ItemType Directory -Force -Path $OutDir | Out-Null

Add-Type -AssemblyName System.Security
$cng = New-Object System.Security.Cryptography.CngKeyCreationParameters
# Exportable in plain text once, so the key can be written out as PKCS#8 below.
$cng.ExportPolicy = [System.Security.Cryptography.CngExportPolicies]::AllowPlaintextExport
$cngKey = [System.Security.Cryptography.CngKey]::Create(
  [System.Security.Cryptography.CngAlgorithm]::ECDsaP256, $null, $cng)
$ecdsa = New-Object System.Security.Cryptography.ECDsaCng($cngKey)

$request = New-Object System.Security.Cryptography.X509Certificates.CertificateRequest(
  'CN=localhost', $ecdsa, [System.Security.Cryptography.HashAlgorithmName]::SHA256)
$san = New-Object System.Security.Cryptography.X509Certificates.SubjectAlternativeNameBuilder
$san.AddDnsName('localhost')
$san.AddIpAddress([System.Net.IPAddress]::Parse('127.0.0.1'))
$san.AddIpAddress([System.Net.IPAddress]::Parse('::1'))
$request.CertificateExtensions.Add($san.Build($false))
$request.CertificateExtensions.Add(
  (New-Object System.Security.Cryptography.X509Certificates.X509BasicConstraintsExtension($false, $false, 0, $true)))
$request.CertificateExtensions.Add(
  (New-Object System.Security.Cryptography.X509Certificates.X509KeyUsageExtension(
    [System.Security.Cryptography.X509Certificates.X509KeyUsageFlags]::DigitalSignature, $true)))
$eku = New-Object System.Security.Cryptography.OidCollection
$eku.Add((New-Object System.Security.Cryptography.Oid('1.3.6.1.5.5.7.3.1', 'Server Authentication'))) | Out-Null
$request.CertificateExtensions.Add(
  (New-Object System.Security.Cryptography.X509Certificates.X509EnhancedKeyUsageExtension($eku, $false)))
$request.CertificateExtensions.Add(
  (New-Object System.Security.Cryptography.X509Certificates.X509SubjectKeyIdentifierExtension($request.PublicKey, $false)))

$now = [DateTimeOffset]::UtcNow
$cert = $request.CreateSelfSigned($now.AddMinutes(-5), $now.AddDays($Days))

function ConvertTo-Pem([string]$label, [byte[]]$der) {
  $b64 = [Convert]::ToBase64String($der, [Base64FormattingOptions]::InsertLineBreaks) -replace "`r`n", "`n"
  "-----BEGIN $label-----`n$b64`n-----END $label-----`n"
}

$pkcs8 = $cngKey.Export([System.Security.Cryptography.CngKeyBlobFormat]::Pkcs8PrivateBlob)
$utf8 = New-Object System.Text.UTF8Encoding($false)

# The key file is created empty, locked down to the current user, then filled.
[System.IO.File]::WriteAllText($key, '', $utf8)
$acl = New-Object System.Security.AccessControl.FileSecurity
$acl.SetAccessRuleProtection($true, $false)
$me = [System.Security.Principal.WindowsIdentity]::GetCurrent().User
$acl.AddAccessRule((New-Object System.Security.AccessControl.FileSystemAccessRule(
  $me, 'FullControl', 'Allow')))
Set-Acl -Path $key -AclObject $acl
[System.IO.File]::WriteAllText($key, (ConvertTo-Pem 'PRIVATE KEY' $pkcs8), $utf8)
[System.IO.File]::WriteAllText($crt, (ConvertTo-Pem 'CERTIFICATE' $cert.RawData), $utf8)

Write-Host "wrote $crt and $key (valid $Days days; localhost, 127.0.0.1, ::1)"
Write-Host "serve HTTPS with: TLS_CERT_PATH=$crt TLS_KEY_PATH=$key"
